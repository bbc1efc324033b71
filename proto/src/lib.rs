//! talm's hub↔agent wire contract. A placeholder: the gRPC package `talm.agent.v1` lands with
//! the hub↔agent channel issue.

//! The image list of a pre-cache spec, and the node configuration that decides where images are
//! pulled from. Pure parsing: callers hand in readers, bytes or file paths.

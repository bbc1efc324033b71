//! `talm-hub agents machineconfig CLUSTER`: renders the MachineConfig that installs talm-agent
//! on a single-node OpenShift cluster (role `master`, Ignition 3.2.0).
//!
//! The MachineConfig writes:
//! - `/etc/talm/agent.env`: the agent's environment (hub endpoint, CA path, state dir, token
//!   path; the cluster is named in a comment, the token carries the identity);
//! - `/etc/talm/hub-ca.crt`: the CA bundle the hub's serving certificate chains to;
//! - `/etc/talm/bootstrap-token`: a fresh one-time bootstrap token for the cluster, issued
//!   through the same enrollment store as `talm-hub agents token`;
//! - the systemd unit `talm-agent.service`, in one of two modes ([`AgentInstall`]):
//!   - **image**: the unit runs the agent image with podman, the host mounted at `/host`;
//!   - **binary**: the hardened unit of `systemd/talm-agent.service` runs
//!     `/usr/local/bin/talm-agent`, which `talm-agent-install.service` downloads once from a
//!     URL and verifies against its SHA-256 (MachineConfigs only carry `data:` URLs, and a
//!     binary is too big for one); beside it, `systemd/talm-recover.service`, enabled, the
//!     unattended recovery the rollback watchdog starts (it runs only while the watchdog's
//!     marker file exists). Image mode does not ship it: automatic rollback needs binary mode.
//!
//! File contents are `data:` URLs: base64 for the token and the CA, percent-encoding for text.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Value, json};

/// The agent image `--image` defaults to (the OLM bundle's `relatedImages` names it too).
pub const DEFAULT_AGENT_IMAGE: &str = "quay.io/talm/talm-agent:0.1.0";
/// The Ignition config version of the rendered MachineConfig.
pub const IGNITION_VERSION: &str = "3.2.0";
/// The agent's unit.
pub const UNIT_NAME: &str = "talm-agent.service";
/// The unit that downloads the agent binary (binary mode).
pub const INSTALL_UNIT_NAME: &str = "talm-agent-install.service";
/// The environment file.
pub const ENV_PATH: &str = "/etc/talm/agent.env";
/// The hub CA bundle.
pub const CA_PATH: &str = "/etc/talm/hub-ca.crt";
/// The bootstrap token file.
pub const TOKEN_PATH: &str = "/etc/talm/bootstrap-token";
/// The agent's state directory.
pub const STATE_DIR: &str = "/var/lib/talm-agent";
/// The agent binary (binary mode; `talm-agent recover` is run from here too).
pub const BINARY_PATH: &str = "/usr/local/bin/talm-agent";
/// The hardened unit of binary mode (the file shipped in `systemd/`).
pub const BINARY_UNIT: &str = include_str!("../../../systemd/talm-agent.service");
/// The unattended-recovery unit of binary mode (the rollback watchdog's).
pub const RECOVER_UNIT_NAME: &str = "talm-recover.service";
/// Its contents (the file shipped in `systemd/`).
pub const RECOVER_UNIT: &str = include_str!("../../../systemd/talm-recover.service");

/// How the agent gets onto the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentInstall {
    /// Run the agent image with podman.
    Image(String),
    /// Download the binary once from `url`, checked against `sha256` (hex).
    Binary {
        /// Where to fetch the binary (http or https).
        url: String,
        /// Its SHA-256, hex.
        sha256: String,
    },
}

/// What the MachineConfig is rendered from.
#[derive(Clone, Debug)]
pub struct Input {
    /// The cluster the token enrolls (also in the MachineConfig's name and the env comment).
    pub cluster: String,
    /// The gateway URL the agent dials, `https://host:port`.
    pub hub_endpoint: String,
    /// PEM CA bundle of the hub's serving certificate.
    pub ca_pem: String,
    /// The bootstrap token, `<id>.<secret>`.
    pub token: String,
    /// Image or binary mode.
    pub install: AgentInstall,
    /// The MachineConfigPool role label (`master` on SNO).
    pub role: String,
}

/// Invalid input for the MachineConfig.
#[derive(Debug, thiserror::Error)]
pub enum MachineConfigError {
    /// `--hub-endpoint` is not an `https://host[:port]` URL.
    #[error("--hub-endpoint {0:?}: want https://host[:port]")]
    Endpoint(String),
    /// The CA bundle holds no certificate.
    #[error("--ca-bundle {0}: no PEM certificate in it")]
    CaBundle(String),
    /// The image reference is empty or has whitespace.
    #[error("--image {0:?}: not an image reference")]
    Image(String),
    /// The binary URL is not http(s).
    #[error("--binary-url {0:?}: want an http:// or https:// URL")]
    BinaryUrl(String),
    /// The SHA-256 is not 64 hex digits.
    #[error("--binary-sha256 {0:?}: want 64 hex digits")]
    Sha256(String),
}

/// Checks the hub endpoint: `https://host[:port][/]`, no spaces.
pub fn check_endpoint(url: &str) -> Result<(), MachineConfigError> {
    let bad = || MachineConfigError::Endpoint(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.is_empty()
        || host_port.contains(['/', '?', '#', '@'])
        || host_port.chars().any(char::is_whitespace)
    {
        return Err(bad());
    }
    if let Some((host, port)) = host_port.rsplit_once(':')
        && !host.ends_with(']')
        && (host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(bad());
    }
    Ok(())
}

/// Checks the install mode's values.
pub fn check_install(install: &AgentInstall) -> Result<(), MachineConfigError> {
    match install {
        AgentInstall::Image(i) => {
            if i.is_empty()
                || i.chars()
                    .any(|c| c.is_whitespace() || c == '\'' || c == '"')
            {
                return Err(MachineConfigError::Image(i.clone()));
            }
        }
        AgentInstall::Binary { url, sha256 } => {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url
                    .chars()
                    .any(|c| c.is_whitespace() || c == '\'' || c == '"')
            {
                return Err(MachineConfigError::BinaryUrl(url.clone()));
            }
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MachineConfigError::Sha256(sha256.clone()));
            }
        }
    }
    Ok(())
}

/// The agent's environment file.
pub fn env_file(input: &Input) -> String {
    let host_root = match input.install {
        AgentInstall::Image(_) => "/host",
        AgentInstall::Binary { .. } => "/",
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# talm-agent for cluster {} (rendered by talm-hub agents machineconfig).",
        input.cluster
    );
    let _ = writeln!(
        s,
        "# The bootstrap token names the cluster; see systemd/agent.env.example for every variable."
    );
    let _ = writeln!(s, "TALM_AGENT_HUB={}", input.hub_endpoint);
    let _ = writeln!(s, "TALM_AGENT_CA={CA_PATH}");
    let _ = writeln!(s, "TALM_AGENT_STATE_DIR={STATE_DIR}");
    let _ = writeln!(s, "TALM_AGENT_BOOTSTRAP_TOKEN_FILE={TOKEN_PATH}");
    let _ = writeln!(s, "TALM_AGENT_HOST_ROOT={host_root}");
    s
}

/// The image-mode unit: podman runs the agent image with the host mounted at `/host`. The
/// container is privileged (it reads etcd's certificates, writes the containers storage and
/// pins ostree deployments through the host), so the systemd sandbox of the binary-mode unit
/// does not apply; the low CPU and I/O priority does.
pub fn image_unit(image: &str) -> String {
    format!(
        "# talm-agent from its image (rendered by talm-hub agents machineconfig --image).
[Unit]
Description=talm agent (hub channel, pre-caching, backups), from {image}
Wants=network-online.target
After=network-online.target crio.service

[Service]
Type=exec
EnvironmentFile=-{ENV_PATH}
ExecStartPre=/bin/mkdir -p -m 0700 {STATE_DIR}
ExecStart=/usr/bin/podman run --rm --replace --name talm-agent \\
  --privileged --net=host --pid=host \\
  --env-file {ENV_PATH} \\
  -v /:/host \\
  -v /etc/talm:/etc/talm:ro \\
  -v {STATE_DIR}:{STATE_DIR}:z \\
  -v /var/lib/containers:/var/lib/containers \\
  {image} run
ExecStop=/usr/bin/podman stop --ignore -t 20 talm-agent
Restart=on-failure
RestartSec=10s
TimeoutStopSec=30s
Nice=10
CPUWeight=20
IOWeight=20

[Install]
WantedBy=multi-user.target
"
    )
}

/// The binary-mode download unit: fetches the binary once and checks its SHA-256; a binary
/// already in place with the right hash is kept.
pub fn install_unit(url: &str, sha256: &str) -> String {
    let sha = sha256.to_ascii_lowercase();
    format!(
        "# Downloads the talm-agent binary (rendered by talm-hub agents machineconfig --binary-url).
[Unit]
Description=Install the talm-agent binary
Wants=network-online.target
After=network-online.target
Before={UNIT_NAME}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo \"{sha}  {BINARY_PATH}\" | sha256sum -c --status && exit 0; \\
  curl -fsSL --retry 5 -o {BINARY_PATH}.new {url} && \\
  echo \"{sha}  {BINARY_PATH}.new\" | sha256sum -c && \\
  chmod 0755 {BINARY_PATH}.new && mv -f {BINARY_PATH}.new {BINARY_PATH}'

[Install]
WantedBy=multi-user.target
"
    )
}

/// The binary-mode agent unit: the shipped hardened unit, started after the download.
pub fn binary_unit() -> String {
    BINARY_UNIT.replacen(
        "After=network-online.target crio.service\n",
        &format!("After=network-online.target crio.service {INSTALL_UNIT_NAME}\nRequires={INSTALL_UNIT_NAME}\n"),
        1,
    )
}

/// A `data:` URL: base64 for binary-ish content (token, certificates), percent-encoding
/// (RFC 3986 unreserved characters kept) otherwise.
pub fn data_url(content: &[u8], base64: bool) -> String {
    if base64 {
        return format!(
            "data:;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(content)
        );
    }
    let mut s = String::from("data:,");
    for &b in content {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

fn file(path: &str, mode: u32, content: &[u8], base64: bool) -> Value {
    json!({
        "path": path,
        "mode": mode,
        "overwrite": true,
        "user": {"name": "root"},
        "contents": {"source": data_url(content, base64)},
    })
}

/// The MachineConfig's name: `50-talm-agent-<cluster>`.
pub fn name(cluster: &str) -> String {
    format!("50-talm-agent-{cluster}")
}

/// Renders the MachineConfig. Validates the endpoint and install mode; the caller has issued
/// the token.
pub fn render(input: &Input) -> Result<Value, MachineConfigError> {
    check_endpoint(&input.hub_endpoint)?;
    check_install(&input.install)?;
    if talm_shared::tls::certs_from_pem("CA bundle", input.ca_pem.as_bytes())
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        return Err(MachineConfigError::CaBundle("(given)".into()));
    }
    let files = vec![
        file(ENV_PATH, 0o600, env_file(input).as_bytes(), false),
        file(CA_PATH, 0o644, input.ca_pem.as_bytes(), true),
        file(
            TOKEN_PATH,
            0o600,
            format!("{}\n", input.token).as_bytes(),
            true,
        ),
    ];
    let units = match &input.install {
        AgentInstall::Image(image) => vec![json!({
            "name": UNIT_NAME,
            "enabled": true,
            "contents": image_unit(image),
        })],
        AgentInstall::Binary { url, sha256 } => vec![
            json!({"name": INSTALL_UNIT_NAME, "enabled": true, "contents": install_unit(url, sha256)}),
            json!({"name": UNIT_NAME, "enabled": true, "contents": binary_unit()}),
            // Enabled so it starts at every boot; it runs only while the watchdog's marker
            // exists (its ConditionPathExists), which is how a recovery resumes after reboots.
            json!({"name": RECOVER_UNIT_NAME, "enabled": true, "contents": RECOVER_UNIT}),
        ],
    };
    let mode = match input.install {
        AgentInstall::Image(_) => "image",
        AgentInstall::Binary { .. } => "binary",
    };
    Ok(json!({
        "apiVersion": "machineconfiguration.openshift.io/v1",
        "kind": "MachineConfig",
        "metadata": {
            "name": name(&input.cluster),
            "labels": {"machineconfiguration.openshift.io/role": input.role},
            "annotations": {
                "talm.dev/cluster": input.cluster,
                "talm.dev/agent-install": mode,
            },
        },
        "spec": {
            "config": {
                "ignition": {"version": IGNITION_VERSION},
                "storage": {"files": files},
                "systemd": {"units": units},
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        for ok in [
            "https://hub.example:9443",
            "https://hub.example",
            "https://hub.example:443/",
            "https://[::1]:8443",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://hub:1",
            "https://",
            "https://hub:x",
            "https://hub/path",
            "hub:443",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(data_url(b"a=b c\n", false), "data:,a%3Db%20c%0A");
        assert_eq!(data_url(b"hi", true), "data:;base64,aGk=");
    }

    #[test]
    fn binary_unit_waits_for_the_download() {
        let u = binary_unit();
        assert!(u.contains(&format!("Requires={INSTALL_UNIT_NAME}")), "{u}");
        assert!(u.contains("ExecStart=/usr/local/bin/talm-agent run"));
    }
}

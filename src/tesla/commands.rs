//! `fleetgate tesla keygen` and `fleetgate tesla sign-config`: the partner key, and a signed
//! telemetry config from fleetgate's own config (no Go proxy).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::jws::{go_json, PartnerKey, TELEMETRY_AUDIENCE};
use super::telemetry_config::ConfigTemplate;
use crate::config::Config;

/// The private key's file name in `keygen`'s folder.
pub const PRIVATE_KEY_FILE: &str = "private-key.pem";
/// The public key's file name (the name Tesla fetches it under).
pub const PUBLIC_KEY_FILE: &str = "com.tesla.3p.public-key.pem";

/// Writes a new partner key to `dir`: the private key (mode 0600; an existing one is never
/// overwritten) and the public key. Returns both paths.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let private = dir.join(PRIVATE_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    let key = PartnerKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&private).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} exists: keygen never overwrites a partner key (vehicles paired with it would have to pair again); move it away first, or write to another --out", private.display())
        } else {
            format!("cannot create {}: {e}", private.display())
        }
    })?;
    file.write_all(key.private_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", private.display()))?;
    std::fs::write(&public, key.public_pem())
        .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
    Ok((private, public))
}

/// What `sign-config` prints.
pub enum Signed {
    /// The compact token.
    Token(String),
    /// The claims (pretty JSON, sorted keys).
    Claims(String),
}

/// Signs the telemetry config `config_path` describes (`fleetgate.tesla`), expiring in
/// `config_ttl_days`; with `claims_only` the claims instead of the token. Returns it and the
/// config's warnings.
pub fn sign_config(config_path: &Path, claims_only: bool) -> Result<(Signed, Vec<String>), String> {
    let loaded = Config::load(config_path).map_err(|e| e.to_string())?;
    let base = config_path.parent().unwrap_or(Path::new(".")).to_owned();
    let tesla =
        loaded.config.fleetgate.tesla.as_ref().ok_or(
            "the config has no fleetgate.tesla section (hostname, ca_file, private_key_file)",
        )?;
    let template = ConfigTemplate::from_config(&loaded.config, &base)?;
    let exp = crate::runner::now_ms() / 1000 + template.ttl_s;
    let claims = template.claims(&template.default_fields, exp);
    let key = tesla.partner_key(&base)?;
    if claims_only {
        // the payload exactly as signed (sorted keys, Go's number forms), aud and iss included
        let mut payload = claims;
        payload.insert("aud".into(), TELEMETRY_AUDIENCE.into());
        payload.insert("iss".into(), key.issuer().into());
        let text = go_json(&serde_json::Value::Object(payload));
        return Ok((Signed::Claims(text), loaded.warnings));
    }
    Ok((
        Signed::Token(key.sign_telemetry_config(&claims)),
        loaded.warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = keygen(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key = PartnerKey::from_pem(&std::fs::read_to_string(&private).unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&public).unwrap(), key.public_pem());
        let again = keygen(dir.path()).unwrap_err();
        assert!(again.contains("never overwrites"), "{again}");
    }
}

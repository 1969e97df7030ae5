//! What `serve` opens before it listens, opened here the same way and without writing
//! anything, so `check-config` refuses what `serve` would refuse: the TLS files parse, are of
//! the right kind and belong together; a host name in `host` resolves; the sites file's
//! features are sites; the store's directory and the logger file can be where they are said
//! to be.
//!
//! Only what the config names is checked; whether a port is free or a broker answers is a fact
//! of the moment `serve` starts, not of the config.

use std::path::Path;

use super::Config;
use crate::ingest::tls::{self, TlsSetupError};

/// Server certificates that expire sooner than this are reported as a warning.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// (problems, warnings) of the files `serve` opens at start-up.
pub(super) fn problems(config: &Config, base: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    tls_files(config, base, &mut problems, &mut warnings);
    // a host name is resolved as `serve` resolves it when it binds
    if let Ok(addr @ super::ListenAddr::Name { .. }) = config.listen_addr() {
        if let Err(e) = addr.resolve() {
            problems.push((
                "host".into(),
                format!("{e}: serve binds this name here; fix it, or use an IP address (0.0.0.0 listens on every interface)"),
            ));
        }
    }
    // parsed as `serve` imports it (a missing file is reported by the config checks)
    let sites_file_exists = config
        .fleetgate
        .sites_file
        .as_ref()
        .is_some_and(|f| Config::resolve(base, f).is_file());
    if sites_file_exists {
        if let Some(Err(e)) = config.sites_file_sites(base) {
            problems.push(("fleetgate.sites_file".into(), e));
        }
    }
    if let Some(dir) = &config.fleetgate.data_dir {
        let path = Config::resolve(base, dir);
        if let Some(problem) = directory_problem(&path) {
            problems.push(("fleetgate.data_dir".into(), problem));
        }
    }
    if let Some(file) = &config.fleetgate.logger_file {
        let path = Config::resolve(base, file);
        if path.is_dir() {
            problems.push((
                "fleetgate.logger_file".into(),
                format!(
                    "{} is a directory: name a file (it is created if missing)",
                    path.display()
                ),
            ));
        } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                problems.push((
                    "fleetgate.logger_file".into(),
                    format!(
                        "directory {} does not exist: create it or fix the path",
                        parent.display()
                    ),
                ));
            }
        }
    }
    (problems, warnings)
}

/// The vehicle CA bundle, the server certificate and key as `serve` builds its TLS
/// configuration from them; an expired or soon expiring server certificate is a warning.
fn tls_files(
    config: &Config,
    base: &Path,
    problems: &mut Vec<(String, String)>,
    warnings: &mut Vec<String>,
) {
    let Some(tls_config) = &config.tls else {
        return;
    };
    let cert = Config::resolve(base, &tls_config.server_cert);
    let key = Config::resolve(base, &tls_config.server_key);
    let mut report = |e: TlsSetupError| match e {
        TlsSetupError::File { key, path, detail } => {
            problems.push((key.to_owned(), format!("cannot use {path}: {detail}")))
        }
        TlsSetupError::Rustls(detail) => problems.push(("tls.server_key".into(), detail)),
    };
    let roots = config.client_roots(base);
    let missing_ca =
        matches!(&roots, crate::ingest::tesla_ca::ClientRoots::File(p) if !p.is_file());
    // a missing CA file is reported by the config checks already
    let verifier = if missing_ca {
        None
    } else {
        tls::client_verifier(&roots).map_err(&mut report).ok()
    };
    // files that do not exist are reported by the config checks already
    if tls_config.server_cert.is_empty()
        || tls_config.server_key.is_empty()
        || !cert.is_file()
        || !key.is_file()
    {
        return;
    }
    match tls::load_certs("tls.server_cert", &cert) {
        Ok(chain) => {
            if let Some(w) = expiry_warning(&chain[0], &cert) {
                warnings.push(w);
            }
        }
        Err(e) => {
            report(e);
            // the key alone still says whether it is a key
            if let Err(e) = tls::load_key("tls.server_key", &key) {
                report(e);
            }
            return;
        }
    }
    if let Err(e) = tls::server_config(verifier, &cert, &key) {
        report(e);
    }
}

/// A warning when the server certificate has expired or expires within 30 days: vehicles
/// refuse an expired server certificate, and `serve` does not.
fn expiry_warning(leaf: &rustls::pki_types::CertificateDer<'_>, path: &Path) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    let left = not_after - now;
    let until = cert.validity().not_after.to_string();
    if left <= 0 {
        Some(format!("tls.server_cert: {} expired on {until}: vehicles refuse it; renew it (cert-manager's Certificate in the chart renews before expiry)", path.display()))
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        Some(format!(
            "tls.server_cert: {} expires on {until} (in {} days): renew it",
            path.display(),
            left / 86_400
        ))
    } else {
        None
    }
}

/// Why `serve` could not open its store in `dir` (created with its parents when missing), if
/// it could not.
fn directory_problem(dir: &Path) -> Option<String> {
    if dir.exists() {
        return (!dir.is_dir()).then(|| {
            format!(
                "{} exists and is not a directory: name a directory (created if missing)",
                dir.display()
            )
        });
    }
    // the nearest existing ancestor must be a directory, or create_dir_all fails
    let mut ancestor = dir.parent();
    while let Some(a) = ancestor.filter(|a| !a.as_os_str().is_empty()) {
        if a.exists() {
            if !a.is_dir() {
                return Some(format!(
                    "{} cannot be created: {} is not a directory",
                    dir.display(),
                    a.display()
                ));
            }
            if a.metadata().is_ok_and(|m| m.permissions().readonly()) {
                return Some(format!(
                    "{} cannot be created: {} is read-only",
                    dir.display(),
                    a.display()
                ));
            }
            return None;
        }
        ancestor = a.parent();
    }
    None
}

//! Where settings come from besides flags: the environment, `*_FILE` secrets, and the default database path.

use std::path::{Path, PathBuf};

use super::{usage, Result, Secret, UsageError};

/// The database file name when neither a path nor a state directory is given.
pub const DEFAULT_DB_FILE: &str = "easytier-probe.db";

/// Environment lookups; a trait so tests can pass a map.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment. An empty variable counts as unset.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// A text setting: the flag's value, else the variable's.
pub fn text(flag_value: Option<String>, env: &dyn Env, var: &str) -> Option<String> {
    flag_value.or_else(|| env.get(var))
}

/// A switch that may also be turned on by a variable (`true`/`false`, `1`/`0`, ...).
pub fn switch(flag: bool, env: &dyn Env, var: &str) -> Result<bool> {
    if flag {
        return Ok(true);
    }
    match env
        .get(var)
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => usage(format!("{var}: {other:?} is not true or false")),
    }
}

/// Reads a secret from a file; the error names the flag and the path, never the content.
pub fn read_secret_file(path: &Path, source: &str) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("{source}: cannot read {}: {e}", path.display())))?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        return usage(format!("{source}: {} is empty", path.display()));
    }
    if value.trim().is_empty() {
        // A blank token would be sent (and refused) at every report.
        return usage(format!(
            "{source}: {} holds only white space",
            path.display()
        ));
    }
    Ok(Secret::new(value))
}

/// A secret given directly or through a file, by flag or by environment:
/// `--{flag}`, `--{flag}-file`, `{var}`, `{var}_FILE`, in that order.
pub fn secret(
    value: Option<String>,
    file: Option<PathBuf>,
    flag: &str,
    env: &dyn Env,
    var: &str,
) -> Result<Option<Secret>> {
    if value.is_some() && file.is_some() {
        return usage(format!("--{flag} and --{flag}-file are mutually exclusive"));
    }
    if let Some(v) = value {
        return Ok(Some(Secret::new(v)));
    }
    if let Some(path) = file {
        return read_secret_file(&path, &format!("--{flag}-file")).map(Some);
    }
    if let Some(v) = env.get(var) {
        return Ok(Some(Secret::new(v)));
    }
    let file_var = format!("{var}_FILE");
    if let Some(path) = env.get(&file_var) {
        return read_secret_file(Path::new(&path), &file_var).map(Some);
    }
    Ok(None)
}

/// The database path when none is given: systemd's state directory if set.
pub fn default_db_path(env: &dyn Env) -> PathBuf {
    match env.get("STATE_DIRECTORY") {
        Some(dirs) => Path::new(dirs.split(':').next().unwrap_or(".")).join("probe.db"),
        None => PathBuf::from(DEFAULT_DB_FILE),
    }
}

/// `--db`, else `DATABASE_PATH`, else the default.
pub fn db_path(flag: Option<PathBuf>, env: &dyn Env) -> PathBuf {
    flag.or_else(|| env.get("DATABASE_PATH").map(PathBuf::from))
        .unwrap_or_else(|| default_db_path(env))
}

/// The database of the packaged service (`StateDirectory=easytier-probe`).
pub const PACKAGED_DB: &str = "/var/lib/easytier-probe/probe.db";

/// The database `status` reads: as the daemon's (`db_path`) when `--db`,
/// `DATABASE_PATH` or `STATE_DIRECTORY` says; otherwise ./easytier-probe.db,
/// or `packaged` when only that one exists, so that `status` finds the
/// packaged service's database without `--db`.
pub fn status_db_path(flag: Option<PathBuf>, env: &dyn Env, packaged: &Path) -> PathBuf {
    let told = flag.is_some() || env.get("DATABASE_PATH").is_some();
    if told || env.get("STATE_DIRECTORY").is_some() {
        return db_path(flag, env);
    }
    let local = PathBuf::from(DEFAULT_DB_FILE);
    if !local.exists() && packaged.exists() {
        return packaged.to_path_buf();
    }
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_finds_the_packaged_database_when_told_nothing() {
        let dir = std::env::temp_dir().join(format!("etp-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let packaged = dir.join("probe.db");
        let none: [(&str, &str); 0] = [];
        // Not there: the daemon's own default.
        assert_eq!(
            status_db_path(None, &none, &packaged),
            PathBuf::from(DEFAULT_DB_FILE)
        );
        std::fs::write(&packaged, b"").unwrap();
        assert_eq!(status_db_path(None, &none, &packaged), packaged);
        let env = [("STATE_DIRECTORY", "/srv/state")];
        assert_eq!(
            status_db_path(None, &env, &packaged),
            PathBuf::from("/srv/state/probe.db")
        );
        let flag = Some(PathBuf::from("/x.db"));
        assert_eq!(
            status_db_path(flag, &none, &packaged),
            PathBuf::from("/x.db")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

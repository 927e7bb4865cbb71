//! PostgreSQL's client and server programs (pg_dump, pg_restore,
//! pg_basebackup, pg_ctl, initdb), run as child processes: the password
//! goes through the environment (never the command line), stderr is kept
//! (bounded) for the error message, and a child is killed when its task is
//! dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use domain::target::ConnectionUrl;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, Command};

/// The tail of a tool's stderr kept for its error message.
const STDERR_BYTES_MAX: usize = 16 * 1024;

/// Where PostgreSQL's programs are, and who runs the server ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub bin_dir: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {program}: {error}")]
    Spawn { program: String, error: std::io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
}

impl Tools {
    pub fn program(&self, name: &str) -> PathBuf {
        let in_bin_dir = self.bin_dir.join(name);
        if in_bin_dir.exists() {
            in_bin_dir
        } else {
            PathBuf::from(name)
        }
    }

    /// A client tool connecting to `url` (as `--dbname`, which takes a URI).
    pub fn client(&self, name: &str, url: &ConnectionUrl) -> Command {
        let (bare_url, password) = url.for_client_tool();
        let mut command = Command::new(self.program(name));
        command
            .arg(format!("--dbname={bare_url}"))
            .arg("--no-password")
            .env_remove("PGPASSWORD")
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(password) = password {
            command.env("PGPASSWORD", password);
        }
        command
    }

    /// A server program (initdb, pg_ctl): run as the `postgres` user when
    /// this process is root, since PostgreSQL refuses to run as root.
    pub fn server(&self, name: &str) -> Command {
        let program = self.program(name);
        let mut command = if is_root() {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        command
            .current_dir("/")
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Bytes the user and group database may need for one entry.
const NSS_BUFFER_BYTES: usize = 16 * 1024;

/// The login name of `uid`, when the user database has it.
pub fn user_name(uid: u32) -> Option<String> {
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; NSS_BUFFER_BYTES];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and `buffer` (which the
    // strings of `entry` point into) outlives the use of `entry`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc != 0 || found.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: a found entry's name is a NUL-terminated string in `buffer`.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The name of group `gid`, when the group database has it.
pub fn group_name(gid: u32) -> Option<String> {
    // SAFETY: all-zero is a valid `group` (null pointers, zero id).
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; NSS_BUFFER_BYTES];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as for getpwuid_r above.
    let rc = unsafe { libc::getgrgid_r(gid, &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if rc != 0 || found.is_null() || entry.gr_name.is_null() {
        return None;
    }
    // SAFETY: a found entry's name is a NUL-terminated string in `buffer`.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.gr_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Gives a directory tree to the `postgres` user (when root), so that a
/// server started as that user can use it.
pub async fn give_to_postgres(path: &Path) -> Result<(), ToolError> {
    if !is_root() {
        return Ok(());
    }
    let mut command = Command::new("chown");
    command
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    run(command, "chown").await
}

/// Bytes a tool's output pipe holds (Linux's default is 64 KiB; 1 MiB is
/// what an unprivileged process may ask for by default).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Lets a dump tool run a whole encryption chunk ahead of its reader
/// instead of stalling every 64 KiB. Best effort: a refusal only costs
/// speed.
pub fn widen_pipe(stdout: &tokio::process::ChildStdout) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor this process owns, with an
    // int argument; failure is reported through the return value only.
    let result = unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    if result < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot widen a tool's output pipe");
    }
}

pub fn spawn(command: &mut Command, program: &str) -> Result<Child, ToolError> {
    command.spawn().map_err(|error| ToolError::Spawn {
        program: program.to_owned(),
        error,
    })
}

/// Reads a child's stderr to its end, keeping the tail.
pub async fn collect_stderr(stderr: Option<ChildStderr>) -> String {
    let Some(mut stderr) = stderr else {
        return String::new();
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_BYTES_MAX {
            kept.drain(..kept.len() - STDERR_BYTES_MAX);
        }
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

/// Waits for a child whose stderr is collected by `stderr`, failing with
/// that stderr when it exits unsuccessfully.
pub async fn finish(
    mut child: Child,
    stderr: tokio::task::JoinHandle<String>,
    program: &str,
) -> Result<String, ToolError> {
    let status = child.wait().await.map_err(|error| ToolError::Spawn {
        program: program.to_owned(),
        error,
    })?;
    let stderr = stderr.await.unwrap_or_default();
    if status.success() {
        Ok(stderr)
    } else {
        Err(ToolError::Failed {
            program: program.to_owned(),
            status: status.to_string(),
            stderr,
        })
    }
}

/// Runs a command to its end (stdout discarded), failing with its stderr.
pub async fn run(mut command: Command, program: &str) -> Result<(), ToolError> {
    let mut child = spawn(&mut command, program)?;
    let stderr = tokio::spawn(collect_stderr(child.stderr.take()));
    finish(child, stderr, program).await.map(drop)
}

//! Running the lab's helper commands (`ip`, `nsenter`, ...) with errors that
//! say what failed.

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args...`, failing on a non-zero exit.
pub fn run<I, S>(program: &str, args: I) -> Result<(), CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_output(program, args).map(|_| ())
}

/// Runs `program args...` and returns its output, failing on a non-zero exit.
pub fn run_output<I, S>(program: &str, args: I) -> Result<Output, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    checked(&mut command)
}

/// Runs a prepared command and fails on a non-zero exit.
pub fn checked(command: &mut Command) -> Result<Output, CmdError> {
    let output = command.output().map_err(|source| CmdError::Spawn {
        command: describe(command),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(CmdError::Failed {
            command: describe(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

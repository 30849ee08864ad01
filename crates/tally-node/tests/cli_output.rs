//! The `tally` binary's output contract when its reader goes away.

use std::process::{Command, Stdio};

/// `tally ... | grep -q x` closes the pipe at the first match; `tally` must then exit
/// quietly with success, not panic ("failed printing to stdout") and fail the pipeline.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    for json in [false, true] {
        let key = dir.path().join(format!("k-{json}.key"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        if json {
            command.arg("--json");
        }
        let mut child =
            command.args(["keygen", "--out"]).arg(&key).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Close the read end before the child has generated and written its key.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "json {json}: {:?}, stderr: {stderr}", output.status);
        assert!(!stderr.contains("panicked"), "json {json}: {stderr}");
        assert!(key.exists(), "the command did its work before writing its output");
    }
}

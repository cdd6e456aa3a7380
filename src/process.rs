//! Whether a process on this host still runs.

/// Whether process `pid` exists and has not exited. A killed process that
/// its parent has not reaped yet (a zombie) has exited: it holds nothing.
pub fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(state_of(&stat), Some('Z' | 'X')),
        Err(_) => false,
    }
}

/// The state letter of a /proc/PID/stat line: the field after the command
/// name, which is in parentheses and may itself hold spaces and ')'.
fn state_of(stat: &str) -> Option<char> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_states_parse() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(u32::MAX));
        assert_eq!(state_of("12 (a b) c) Z 1 2"), Some('Z'));
        assert_eq!(state_of("12 (zeroblk) S 1 2"), Some('S'));
    }

    #[test]
    fn a_zombie_is_not_running() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!is_running(pid), "exited, not yet reaped");
        drop(child);
    }
}

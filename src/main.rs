//! The `rollout` binary: everything happens in [`rollout::run`].

fn main() -> std::process::ExitCode {
    rollout::run()
}

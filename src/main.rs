use clap::Parser;

/// Everything that must be decided before any other thread starts (the allocator, the
/// compute threads, the software rasterizer's threads), then the command.
fn main() -> std::process::ExitCode {
    flamingo::platform::tune_allocator();
    flamingo::platform::quiet_broken_pipe();
    let cli = flamingo::cli::Cli::parse();
    let threads = if cli.is_app() {
        // The app's own setting, else every core but one (left to the window).
        let settings = cli
            .app_data_dir()
            .or_else(flamingo::app::persistence::default_data_dir)
            .map(|d| flamingo::app::persistence::read_settings(&d))
            .unwrap_or_default();
        Some(
            settings
                .threads
                .unwrap_or_else(flamingo::platform::default_threads),
        )
    } else {
        cli.threads()
    };
    // A user's RAYON_NUM_THREADS wins over the app's automatic choice, within what this
    // machine can run (a count the system cannot start would fail inside the thread pool).
    flamingo::platform::check_thread_variable();
    if cli.threads().is_some() || std::env::var_os("RAYON_NUM_THREADS").is_none() {
        flamingo::platform::configure_threads(threads);
    }
    if cli.is_app() && std::env::var_os("LP_NUM_THREADS").is_none() {
        // Where the window is drawn by Mesa's software rasterizer (VMs, remote desktops,
        // Xvfb), its threads would compete with the model for every core and stall frames;
        // one is plenty for this UI. A GPU driver ignores the variable.
        std::env::set_var("LP_NUM_THREADS", "1");
    }
    flamingo::cli::init_logging();
    match flamingo::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

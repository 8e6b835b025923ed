use clap::Parser;

fn main() -> std::process::ExitCode {
    flamingo::model::loader::tune_allocator();
    let cli = flamingo::cli::Cli::parse();
    match flamingo::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The `throughline` command. All logic lives in the library; see `cli`.

fn main() {
    std::process::exit(throughline::cli::main());
}

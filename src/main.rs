//! The `throughline` command. All logic lives in the library; see `cli`.

/// jemalloc: the dataflow allocates and frees many small batches (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // fail points named in `FAILPOINTS` (test builds only: elsewhere this does nothing)
    let faults = fail::FailScenario::setup();
    let code = throughline::cli::main();
    faults.teardown();
    std::process::exit(code);
}

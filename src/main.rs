//! The `throughline` command. All logic lives in the library; see `cli`.

/// jemalloc: the dataflow allocates and frees many small batches (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(throughline::cli::main());
}

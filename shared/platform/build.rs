// `sqlx::migrate!` embeds the workspace's migrations/ at compile time, but
// cargo does not know the macro reads that directory: without this, a new
// migration is left out of the binaries until something else in the crate
// changes.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}

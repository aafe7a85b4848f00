//! Rebuild when the embedded tool or prompt files change (include_dir does not say so).

fn main() {
    println!("cargo:rerun-if-changed=tools.d");
    println!("cargo:rerun-if-changed=prompts.d");
}

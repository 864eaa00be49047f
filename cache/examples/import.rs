//! Imports a folder of `.npy` files (laid out like the `posthoc-small` fixture) into a
//! cache and verifies it:
//!
//! ```text
//! cargo run -p posthoc-cache --example import -- ../shared/fixtures/posthoc-small /tmp/small-cache
//! ```

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [from, out] = &args[..] else {
        eprintln!("usage: import <npy folder> <new cache dir>");
        std::process::exit(2);
    };
    let options = posthoc_cache::ImportOptions {
        model_id: "imported".into(),
        ..Default::default()
    };
    match posthoc_cache::import_npy(from, out, &options).and_then(|_| posthoc_cache::verify(out)) {
        Ok(report) => {
            for f in &report.passed {
                println!("{:<34} {:>8} rows {:>10} bytes", f.name, f.rows, f.bytes);
            }
            if let Err(e) = report.into_result() {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

//! `sellable keys new`: a new API key, printed once with the configuration entry that admits it.

use anyhow::Result;
use sellable_serving::door::KeyEntry;

use crate::cli::KeysNewArgs;

pub fn new(args: &KeysNewArgs) -> Result<()> {
    let mut scopes = args.scope.clone();
    scopes.sort();
    scopes.dedup();
    let (key, entry) = KeyEntry::generate(&args.name, scopes);
    let scopes: Vec<String> = entry.scopes.iter().map(|scope| format!("{:?}", scope.as_str())).collect();
    eprintln!("keys: the key of '{}' (shown this once; give it to its client, it is not kept):", entry.name);
    println!("{key}");
    eprintln!("\nkeys: add this to the configuration file (the key's SHA-256 only), then restart the server:\n");
    eprintln!("[[serve.keys]]\nname = {:?}\nscopes = [{}]\nsha256 = {:?}", entry.name, scopes.join(", "), entry.sha256);
    Ok(())
}

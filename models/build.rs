// XGBoost is linked as a shared library; `.cargo/config.toml` points XGBOOST_LIB_DIR at the copy
// `scripts/setup.sh` unpacks. The search path propagates to every binary that links this crate.
// Without the `train` feature nothing links XGBoost.
fn main() {
    println!("cargo:rerun-if-env-changed=XGBOOST_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    match std::env::var("XGBOOST_LIB_DIR") {
        Ok(dir) => println!("cargo:rustc-link-search=native={dir}"),
        Err(_) => println!("cargo:warning=XGBOOST_LIB_DIR is not set: run scripts/setup.sh"),
    }
}

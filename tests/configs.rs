//! Every file in configs/ parses and validates, and resolves into a runnable plan.

use std::path::Path;

use diffstream::config::Config;

#[test]
fn every_config_file_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let file = path.display().to_string();
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            config.params(&file).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 2, "configs/ should hold the demo and an example config");
}

#[test]
fn strictness() {
    for (text, key) in [
        ("workers = 2", "workers"),
        ("[inputs.clicks]\nkind = \"file\"\npath = \"x\"\nrtae = 3.0\n", "inputs.clicks"),
        ("[inputs.clikcs]\nkind = \"stdin\"\n", "inputs.clikcs"),
        ("[inputs.clicks]\nkind = \"ftp\"\n", "inputs.clicks"),
        ("[sensor_metrics]\nsize = \"1 fortnight\"\n", "sensor_metrics.size"),
        ("[sensor_metrics]\nslide = \"30s\"\n", "sensor_metrics.slide"),
        ("[sensor_metrics.normal_ranges]\nvoltage = { min = 5.0, max = 1.0 }\n", "sensor_metrics.normal_ranges.voltage"),
        ("dataflows = [\"user_counts\"]", "dataflows[0]"),
    ] {
        let e = Config::parse(text, "test.toml").expect_err(text).to_string();
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains(&format!("`{key}")), "{text:?} gave {e}");
    }
}

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
            config.sensor_params(&file).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 2, "configs/ should hold the demo and an example config");
}

/// An unknown generator is named with the ones there are.
#[test]
fn an_unknown_generator_names_the_generators() {
    let e = Config::parse("[inputs.payroll]\nkind = \"generator\"\ncolumns = [\"id int\"]\n", "t.toml").unwrap_err().to_string();
    assert!(e.contains("there is no generator `payroll`; the generators are users, clicks, sensors, transactions, sales, inputs"), "{e}");
    assert!(e.contains("generator = "), "{e}");
    let ok = "[inputs.tx]\nkind = \"generator\"\ngenerator = \"transactions\"\ncolumns = [\"transaction_id text\"]\n";
    Config::parse(ok, "t.toml").unwrap_or_else(|e| panic!("{e}"));
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
        ("[kafka.options]\n\"sasl.password\" = \"hunter2\"\n", "kafka.options.\"sasl.password\""),
        ("[kafka.options]\n\"enable.auto.commit\" = \"true\"\n", "kafka.options.\"enable.auto.commit\""),
        ("[inputs.clicks]\nkind = \"kafka\"\ntopics = []\n", "inputs.clicks.topics"),
        ("[inputs.clicks]\nkind = \"kafka\"\ntopics = [\"c\"]\nstart = \"tomorrow\"\n", "inputs.clicks.start"),
        // a generator input feeds the generator of its name, or the one it names
        ("[inputs.payroll]\nkind = \"generator\"\ncolumns = [\"id int\"]\n", "inputs.payroll.generator"),
        ("[inputs.t]\nkind = \"generator\"\ngenerator = \"transaction\"\ncolumns = [\"id int\"]\n", "inputs.t.generator"),
    ] {
        let e = Config::parse(text, "test.toml").expect_err(text).to_string();
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains(&format!("`{key}")), "{text:?} gave {e}");
    }
}

#[test]
fn secrets_come_from_the_environment_and_are_not_printed() {
    let text = "[kafka]\nbootstrap_servers = \"b:9092\"\n[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-256\"\n\"sasl.username\" = \"diffstream\"\n[kafka.secret_env]\n\"sasl.password\" = \"DIFFSTREAM_TEST_SECRET_UNSET\"\n";
    let config = Config::parse(text, "t.toml").unwrap();
    let e = config.kafka.client_config().expect_err("the variable is unset");
    assert!(e.contains("DIFFSTREAM_TEST_SECRET_UNSET") && e.contains("export"), "{e}");
    std::env::set_var("DIFFSTREAM_TEST_SECRET_SET", "s3cret-value");
    let text = text.replace("_UNSET", "_SET");
    let config = Config::parse(&text, "t.toml").unwrap();
    let client = config.kafka.client_config().unwrap();
    assert_eq!(client.get("sasl.password"), Some("s3cret-value"));
    assert!(!format!("{:?}", config).contains("s3cret-value"), "the config never holds the secret");
}

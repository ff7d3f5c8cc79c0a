//! Docker cannot run here, so this checks that docker-compose.yml, the Dockerfile,
//! docker/ and configs/docker.toml agree: services, ports, topics, the cluster layout and
//! database names.

use std::path::Path;

use diffstream::config::{Config, InputConfig};
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap()).expect("docker-compose.yml is YAML")
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
        other => serde_yaml::to_string(other).unwrap(),
    }
}

#[test]
fn compose_and_docker_config_agree() {
    let compose = compose();
    let services = &compose["services"];
    for s in ["kafka", "kafka-init", "mongodb", "kafka-ui", "mongo-express", "diffstream-0", "diffstream-1"] {
        assert!(services.get(s).is_some(), "docker-compose.yml has no service `{s}`");
    }
    assert!(text(&services["kafka"]["image"]).starts_with("apache/kafka"), "Apache Kafka");
    assert!(text(&services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]).contains("controller"), "KRaft mode");
    assert!(text(&services["mongodb"]["image"]).starts_with("mongo:7"), "MongoDB 7");

    let config = Config::load(&root().join("configs/docker.toml")).unwrap_or_else(|e| panic!("{e}"));
    // The engine reaches Kafka on a listener the broker has, by its service name.
    let bootstrap = config.kafka.bootstrap_servers.clone().expect("docker.toml names the broker");
    let (host, port) = bootstrap.split_once(':').unwrap();
    assert!(services.get(host).is_some(), "bootstrap host `{host}` is not a compose service");
    let listeners = text(&services[host]["environment"]["KAFKA_LISTENERS"]);
    assert!(listeners.contains(&format!(":{port}")), "kafka listens on {listeners}, not :{port}");
    assert!(text(&services["kafka-ui"]["environment"]["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"]).contains(&bootstrap));

    // Every input topic is created by kafka-init and fed by the producers (the broker does not auto-create).
    let init = text(&services["kafka-init"]["command"]);
    let producers = text(&services["producers"]["command"]);
    let mut topics = 0;
    for (name, input) in &config.inputs {
        let InputConfig::Kafka(k) = input else { panic!("docker.toml input `{name}` is not Kafka") };
        for t in &k.topics {
            assert!(init.split_whitespace().any(|w| w.trim_end_matches(';') == t), "kafka-init does not create topic `{t}`");
            assert!(producers.contains(&format!("--topic {t}")), "no producer writes topic `{t}`");
            topics += 1;
        }
    }
    assert_eq!(topics, 3);

    // The users' pipelines (profile `pipelines`): each config's input topics are created and fed,
    // and a service runs it with the broker and MongoDB of the compose file.
    let feeders = text(&services["pipeline-producers"]["command"]);
    for pipeline in ["transactions", "sales", "applications"] {
        let config = Config::load(&root().join(format!("configs/{pipeline}.toml"))).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.kafka.bootstrap_servers.is_none(), "{pipeline}.toml takes the broker from KAFKA_BOOTSTRAP");
        for (name, input) in &config.inputs {
            let InputConfig::Kafka(k) = input else { panic!("{pipeline}.toml input `{name}` is not Kafka") };
            for t in &k.topics {
                assert!(init.split_whitespace().any(|w| w.trim_end_matches(';') == t), "kafka-init does not create topic `{t}`");
                assert!(feeders.contains(&format!("--topic {t}")), "no producer writes topic `{t}`");
            }
        }
        let service = &services[pipeline];
        assert_eq!(text(&service["environment"]["KAFKA_BOOTSTRAP"]), bootstrap);
        let command: Vec<String> = service["command"].as_sequence().expect("a list").iter().map(text).collect();
        assert!(command.contains(&format!("/app/configs/{pipeline}.toml")), "{command:?}");
        for v in &config.views {
            let sql = root().join("configs").join(v);
            assert!(sql.exists() && sql.starts_with(root()), "{}", sql.display());
        }
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY dataflows/*.sql /app/dataflows/"), "the image holds the views the configs name");
    assert!(config.output.kafka.is_some(), "docker.toml writes its outputs to Kafka");

    // Two processes of two workers, each named in the hostfile in process order.
    let hosts: Vec<String> = std::fs::read_to_string(root().join("docker/hosts.txt")).unwrap().lines().map(String::from).collect();
    assert_eq!(hosts.len(), 2);
    for (i, line) in hosts.iter().enumerate() {
        let (host, port) = line.split_once(':').unwrap();
        port.parse::<u16>().expect("hostfile port");
        let command: Vec<String> = services[host]["command"].as_sequence().expect("a list").iter().map(text).collect();
        let arg = |flag: &str| command.iter().position(|a| a == flag).map(|p| command[p + 1].clone());
        assert_eq!(arg("-p").as_deref(), Some(i.to_string().as_str()), "{host} is process {i}");
        assert_eq!(arg("-n").as_deref(), Some("2"));
        assert_eq!(arg("-w").map(|w| w.parse::<usize>().unwrap()), Some(config.runtime.workers));
        assert_eq!(arg("-h").as_deref(), Some("/app/docker/hosts.txt"));
        assert_eq!(arg("--config").as_deref(), Some("/app/configs/docker.toml"));
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY configs /app/configs") && dockerfile.contains("COPY docker /app/docker"));

    // MongoDB is initialised with a collection per output in the `diffstream` database.
    let init_js = std::fs::read_to_string(root().join("docker/mongo-init.js")).unwrap();
    assert!(init_js.contains("getSiblingDB(\"diffstream\")"));
    let outputs = diffstream::config::builtin::DATAFLOWS.iter().flat_map(|d| diffstream::config::builtin::outputs(d));
    for output in outputs.copied().chain(["dead_letters"]) {
        assert!(init_js.contains(&format!("\"{output}\"")), "mongo-init.js does not create `{output}`");
    }
    // The sensor outputs go to MongoDB under the IoT pipeline's names, from both processes.
    let mongo = config.output.mongodb.as_ref().expect("docker.toml writes to MongoDB");
    assert_eq!(mongo.database, "iot_analytics");
    assert_eq!(mongo.collection("sensor_window_metrics"), "windowed_metrics");
    assert_eq!(mongo.collection("anomaly_alerts"), "anomaly_alerts");
    assert!(mongo.writes("sensor_window_metrics") && mongo.writes("anomaly_alerts") && !mongo.writes("user_activity"));
    assert!(init_js.contains("getSiblingDB(\"iot_analytics\")") && init_js.contains("\"windowed_metrics\""));
    for host in ["diffstream-0", "diffstream-1"] {
        let uri = text(&services[host]["environment"][mongo.uri_env.as_str()]);
        assert!(uri.starts_with("mongodb://mongodb:27017"), "{host} reaches the compose MongoDB, not {uri:?}");
    }
    // The dashboard: served by the first process, published on the host's loopback.
    let listen = config.http.listen.clone().expect("docker.toml serves the dashboard");
    let port = listen.rsplit(':').next().unwrap();
    assert!(text(&services["diffstream-0"]["ports"]).contains(&format!("127.0.0.1:{port}:{port}")), "diffstream-0 publishes :{port}");
    let volumes = text(&services["mongodb"]["volumes"]);
    assert!(volumes.contains("./docker/mongo-init.js:/docker-entrypoint-initdb.d/"));
}

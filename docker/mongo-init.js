// Collections and the indexes the IoT users query by (used by the MongoDB sink).
const db2 = db.getSiblingDB("diffstream");
for (const c of ["user_event_counts", "event_type_counts", "user_activity", "sensor_window_metrics", "anomaly_alerts", "dead_letters"]) {
  db2.createCollection(c);
}
db2.sensor_window_metrics.createIndex({ sensor_type: 1, location: 1 });
db2.sensor_window_metrics.createIndex({ window_start: 1 });
db2.anomaly_alerts.createIndex({ timestamp: 1 });
db2.anomaly_alerts.createIndex({ sensor_id: 1, timestamp: 1 });
db2.anomaly_alerts.createIndex({ alert_type: 1, timestamp: 1 });

// The IoT pipeline's names, which configs/docker.toml writes the sensor outputs under.
const iot = db.getSiblingDB("iot_analytics");
for (const c of ["windowed_metrics", "anomaly_alerts"]) {
  iot.createCollection(c);
}
iot.windowed_metrics.createIndex({ sensor_type: 1, location: 1 });
iot.windowed_metrics.createIndex({ window_start: 1 });
iot.anomaly_alerts.createIndex({ timestamp: 1 });
iot.anomaly_alerts.createIndex({ sensor_id: 1, timestamp: 1 });

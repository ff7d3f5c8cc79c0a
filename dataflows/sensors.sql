-- The IoT pipeline, `sensor_metrics`: windowed metrics and anomaly alerts over `sensors`,
-- whose event time is `timestamp`. `diffstream run sensor_metrics …` runs these views with the
-- window and the normal ranges of the config's [sensor_metrics] (src/config/builtin.rs puts
-- them in place of the one-minute TUMBLE and the VALUES below); configs/sensors.toml runs them
-- as written.
--
-- A reading that could only land in windows the watermark has passed is a dead letter with
-- reason `late` before any view sees it, and a window's state is dropped once the watermark
-- passes its end.

-- Normal ranges per sensor type, inclusive; a type not listed only alerts when flagged.
CREATE VIEW normal_ranges AS
  SELECT * FROM (VALUES
    ('temperature', 15.0, 25.0),
    ('humidity', 40.0, 60.0),
    ('pressure', 1000.0, 1020.0),
    ('vibration', 0.1, 1.0),
    ('voltage', 220.0, 230.0),
    ('current', 1.0, 5.0)
  ) AS r (sensor_type, min_value, max_value);

-- count, average, least and greatest value, and readings flagged `anomaly`, per sensor type
-- and location in one-minute windows
CREATE VIEW sensor_window_metrics AS
  SELECT sensor_type, location, window_start, window_end,
         COUNT(*) AS count, AVG(value) AS avg, MIN(value) AS min, MAX(value) AS max,
         SUM(CASE WHEN status = 'anomaly' THEN 1 ELSE 0 END) AS anomaly_count
  FROM TUMBLE(sensors, "timestamp", INTERVAL '1' MINUTE)
  GROUP BY sensor_type, location, window_start, window_end;

-- readings above (`high`) or below (`low`) their type's range, or flagged (`flagged`)
CREATE VIEW anomaly_alerts AS
  SELECT s.sensor_id, s.sensor_type, s.location, s.value, s."timestamp",
         CASE WHEN s.value > r.max_value THEN 'high'
              WHEN s.value < r.min_value THEN 'low'
              ELSE 'flagged' END AS alert_type
  FROM sensors s LEFT JOIN normal_ranges r ON s.sensor_type = r.sensor_type
  WHERE s.value > r.max_value OR s.value < r.min_value OR s.status = 'anomaly';

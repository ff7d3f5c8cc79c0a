-- The per-user dataflows, `user_event_counts` (clicks per user and per event kind) and
-- `user_activity` (each user's latest profile with their click count), over `clicks` and
-- `users` (`users` is an upsert input on `user_id`: a profile update retracts the old row).
-- `diffstream run user_event_counts user_activity …` runs these views, with the inputs'
-- columns src/config/builtin.rs declares; configs/clicks.toml declares them itself.

-- clicks per user
CREATE VIEW user_event_counts AS
  SELECT user_id, COUNT(*) AS event_count
  FROM clicks
  GROUP BY user_id;

-- clicks per event type
CREATE VIEW event_type_counts AS
  SELECT event, COUNT(*) AS count
  FROM clicks
  GROUP BY event;

-- each user's latest profile with their click count (inner: a user shows once they have both)
CREATE VIEW user_activity AS
  SELECT u.user_id, u.name, u.email, c.event_count
  FROM users u JOIN user_event_counts c ON u.user_id = c.user_id;

-- The per-user dataflows as SQL views over `clicks` and `users` (configs/clicks.toml declares
-- their columns; `users` is an upsert input on `user_id`: a profile update retracts the old
-- row). They equal the built-in `user_event_counts` (with `event_type_counts`) and
-- `user_activity` row for row, at every worker count (tests/sql.rs); the `sql_` prefix keeps
-- them apart from the built-in outputs of the same rows.

-- clicks per user
CREATE VIEW sql_user_event_counts AS
  SELECT user_id, COUNT(*) AS event_count
  FROM clicks
  GROUP BY user_id;

-- clicks per event type
CREATE VIEW sql_event_type_counts AS
  SELECT event, COUNT(*) AS count
  FROM clicks
  GROUP BY event;

-- each user's latest profile with their click count (inner: a user shows once they have both)
CREATE VIEW sql_user_activity AS
  SELECT u.user_id, u.name, u.email, c.event_count
  FROM users u JOIN sql_user_event_counts c ON u.user_id = c.user_id;

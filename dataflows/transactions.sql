-- Card transactions (the Spark + Kafka lab's pipeline) over the input `transactions`
-- (configs/transactions.toml declares its columns and its event time, `timestamp`).
-- Records that do not decode, and transactions dated in a window the watermark has passed,
-- are dead letters before any view sees them.

-- successful transactions, in US dollars, flagged high-value (amount > 500) and suspicious
-- (fraud score > 0.8)
CREATE VIEW processed_transactions AS
  SELECT transaction_id, user_id, amount, currency,
         CASE currency WHEN 'EUR' THEN amount * 1.1
                       WHEN 'GBP' THEN amount * 1.3
                       ELSE amount END AS amount_usd,
         amount > 500 AS is_high_value,
         fraud_score > 0.8 AS is_suspicious,
         type, "timestamp", location, merchant_id, category, fraud_score
  FROM transactions
  WHERE status = 'success';

-- the high-value and suspicious ones, with why
CREATE VIEW transaction_alerts AS
  SELECT transaction_id, user_id, amount_usd, location, merchant_id, "timestamp",
         CASE WHEN is_high_value AND is_suspicious THEN 'high_value_suspicious'
              WHEN is_high_value THEN 'high_value'
              ELSE 'suspicious' END AS alert_reason
  FROM processed_transactions
  WHERE is_high_value OR is_suspicious;

-- per user: how many, how much, the largest, how many suspicious, at how many merchants and
-- in how many categories
CREATE VIEW user_statistics AS
  SELECT user_id,
         COUNT(*) AS transaction_count,
         SUM(amount_usd) AS total_amount_usd,
         AVG(amount_usd) AS avg_amount_usd,
         MAX(amount) AS max_amount,
         SUM(CASE WHEN is_suspicious THEN 1 ELSE 0 END) AS suspicious_count,
         COUNT(DISTINCT merchant_id) AS distinct_merchants,
         COUNT(DISTINCT category) AS distinct_categories
  FROM processed_transactions
  GROUP BY user_id;

-- totals per category and per location in one-minute windows
CREATE VIEW category_totals AS
  SELECT category, window_start, window_end,
         COUNT(*) AS transaction_count, SUM(amount_usd) AS total_amount_usd
  FROM TUMBLE(processed_transactions, "timestamp", INTERVAL '1' MINUTE)
  GROUP BY category, window_start, window_end;

CREATE VIEW location_totals AS
  SELECT location, window_start, window_end,
         COUNT(*) AS transaction_count, SUM(amount_usd) AS total_amount_usd
  FROM TUMBLE(processed_transactions, "timestamp", INTERVAL '1' MINUTE)
  GROUP BY location, window_start, window_end;

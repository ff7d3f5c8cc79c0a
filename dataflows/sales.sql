-- Sales per region (the Spark–Kafka integration guide's pipeline) over the input `sales`
-- (configs/sales.toml declares its columns and its event time, `timestamp`, with 10 s of
-- allowed lateness: the guide's watermark). Records that fail to parse are dead letters with
-- the reason (on Kafka, in the error topic).

-- running totals per region
CREATE VIEW sales_by_region AS
  SELECT region, COUNT(*) AS orders, SUM(amount) AS revenue, AVG(amount) AS avg_order, SUM(quantity) AS units
  FROM sales
  GROUP BY region;

-- the same in one-minute windows sliding every 30 seconds
CREATE VIEW sales_by_region_windowed AS
  SELECT region, window_start, window_end, COUNT(*) AS orders, SUM(amount) AS revenue, SUM(quantity) AS units
  FROM HOP(sales, "timestamp", INTERVAL '30' SECOND, INTERVAL '1' MINUTE)
  GROUP BY region, window_start, window_end;

-- per category in ten-minute windows sliding every five minutes
CREATE VIEW category_trends AS
  SELECT category, window_start, window_end, COUNT(*) AS orders, SUM(amount) AS revenue, SUM(quantity) AS units
  FROM HOP(sales, "timestamp", INTERVAL '5' MINUTE, INTERVAL '10' MINUTE)
  GROUP BY category, window_start, window_end;

-- revenue per product and region
CREATE VIEW product_revenue AS
  SELECT region, product, SUM(amount) AS revenue, SUM(quantity) AS units
  FROM sales
  GROUP BY region, product;

-- the five products of each region with the most revenue (ties: by product name); a change
-- to one product's revenue renumbers only its region's rows
CREATE VIEW top_products AS
  SELECT region, product_rank, product, revenue, units
  FROM (SELECT region, product, revenue, units,
               ROW_NUMBER() OVER (PARTITION BY region ORDER BY revenue DESC, product) AS product_rank
        FROM product_revenue) ranked
  WHERE product_rank <= 5;

-- Order applications (the Quix Streams example): `content` is "<product> <quantity>".
-- A message whose content does not split into a product and an integer becomes a dead letter
-- of `applications` with the reason (the example's dlq.txt).

CREATE VIEW applications AS
  SELECT id, name, subject,
         split_part(content, ' ', 1) AS product,
         CAST(split_part(content, ' ', 2) AS int) AS quantity
  FROM inputs;

CREATE VIEW applications_per_product AS
  SELECT product, COUNT(*) AS applications, SUM(quantity) AS quantity
  FROM applications
  GROUP BY product;

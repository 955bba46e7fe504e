-- initdb.sql - the demo source for compose.yaml: a replication user, a table with rows,
-- a publication.
CREATE ROLE walrelay LOGIN REPLICATION PASSWORD 'walrelay-demo-password';
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12, 2),
                     created timestamptz NOT NULL DEFAULT now());
INSERT INTO orders (id, customer, amount)
SELECT g, 'customer ' || (g % 100), (g % 997) * 1.25 FROM generate_series(1, 10000) g;
GRANT SELECT ON orders TO walrelay;
CREATE PUBLICATION shop_pub FOR TABLE orders;

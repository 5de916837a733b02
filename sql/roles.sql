-- A least-privilege role for walbox, and the publication it relays, created beforehand.
-- Safe to run again: it creates what is missing and leaves what exists as it is (an existing
-- role gets LOGIN and REPLICATION, an existing publication gets the table if it lacks it).
--
-- Run as the outbox table's owner (or a superuser: creating a REPLICATION role needs one),
-- connected to the application's database:
--
--   psql -d app -v role=walbox -v schema=public -v table=outbox -v publication=walbox \
--        -f sql/roles.sql
--
-- Every variable is optional (the defaults are shown). Names are taken literally, case and all,
-- as walbox's --table takes them. For the presets' tables (docs: frameworks/presets.md):
--
--   walbox's outbox (sql/outbox.sql)   -v table=outbox
--   CAP (--preset cap)                 -v schema=cap -v table=published
--   eShop (--preset eshop)             -v table=IntegrationEventLog
--     (eShop's Ordering service keeps it in its own schema: -v schema=ordering)
--   MASA + Dapr (--preset dapr)        -v table=IntegrationEventLog
--   EF Core "OutboxMessages"           -v table=OutboxMessages
--   Debezium's outbox (--columns debezium)  -v table=<your outbox table>
--   MassTransit, NServiceBus, CloudEvents use walbox's outbox table.
--
-- Give each relay its own slot and publication (e.g. -v publication=walbox_cap, and
-- --slot walbox_cap --publication walbox_cap for walbox).
--
-- Then give the role a password without putting it on a command line: in psql,
-- `\password walbox` (stored as SCRAM-SHA-256 when password_encryption is scram-sha-256,
-- PostgreSQL's default), and point walbox at it with --postgres-url postgres://walbox@db/app
-- and --postgres-password-file.
--
-- What walbox does with each grant:
--   LOGIN, REPLICATION  connect, create its logical slot (walbox setup/run), stream from it, and
--                       drop its slots (walbox teardown, pg_drop_replication_slot)
--   CONNECT, USAGE      reach the database and the table's schema
--   SELECT              read the outbox table; nothing else in the database
--   (with -v backfill=on) SELECT, INSERT, UPDATE, DELETE on walbox_backfill, in the outbox
--                       table's schema: where `walbox run --backfill` keeps the cut-over
--                       backfill's record (docs: operations/backfill.md); walbox creates it
--                       itself only when its role may create tables in that schema
-- It is not a superuser and owns nothing. Because CREATE PUBLICATION needs ownership of the
-- table, the publication is created here, by the owner; walbox finds it and only checks that
-- it covers the table. For the same reason only the owner can drop it: `walbox teardown` as
-- this role drops the slots and says the publication is the owner's to drop.
\set ON_ERROR_STOP on
\if :{?role} \else \set role walbox \endif
\if :{?schema} \else \set schema public \endif
\if :{?table} \else \set table outbox \endif
\if :{?publication} \else \set publication walbox \endif
\if :{?backfill} \else \set backfill off \endif

BEGIN;
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS create_role \gset
\if :create_role
CREATE ROLE :"role" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
\else
SELECT NOT (rolcanlogin AND rolreplication) AS fix_role FROM pg_roles WHERE rolname = :'role' \gset
\if :fix_role
ALTER ROLE :"role" WITH LOGIN REPLICATION;
\endif
\endif
GRANT CONNECT ON DATABASE :"DBNAME" TO :"role";
GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT SELECT ON TABLE :"schema".:"table" TO :"role";

-- Inserts only: walbox relays inserts and ignores every other change anyway. A partitioned
-- table's rows are published under its own name (walbox refuses to run without that).
SELECT NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication')
  AS create_publication \gset
SELECT NOT EXISTS (
  SELECT 1 FROM pg_publication_tables
  WHERE pubname = :'publication' AND schemaname = :'schema' AND tablename = :'table'
) AS add_table \gset
\if :create_publication
CREATE PUBLICATION :"publication" FOR TABLE :"schema".:"table"
  WITH (publish = 'insert', publish_via_partition_root = true);
\elif :add_table
ALTER PUBLICATION :"publication" ADD TABLE :"schema".:"table";
\endif

-- The cut-over backfill's record (walbox run --backfill): the same table walbox would create.
\if :backfill
CREATE TABLE IF NOT EXISTS :"schema".walbox_backfill (
  slot_name text PRIMARY KEY,
  state text NOT NULL,
  predicate text NOT NULL,
  consistent_lsn pg_lsn,
  snapshot text,
  end_key text[],
  rows_expected bigint,
  rows_confirmed bigint NOT NULL DEFAULT 0,
  last_key text[],
  attempts integer NOT NULL DEFAULT 0,
  started_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE :"schema".walbox_backfill TO :"role";
\endif
COMMIT;

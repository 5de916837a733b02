-- A least-privilege role for walbox, and the publication it relays, created beforehand.
--
-- Run as the outbox table's owner (or a superuser: creating a REPLICATION role needs one),
-- connected to the application's database:
--
--   psql -d app -v role=walbox -v schema=public -v table=outbox -v publication=walbox \
--        -f sql/roles.sql
--
-- Every variable is optional (the defaults are shown). Then give the role a password without
-- putting it on a command line: in psql, `\password walbox` (stored as SCRAM-SHA-256 when
-- password_encryption is scram-sha-256, PostgreSQL's default), and point walbox at it with
-- --postgres-url postgres://walbox@db/app and --postgres-password-file.
--
-- What walbox does with each grant:
--   LOGIN, REPLICATION  connect, create its logical slot (walbox setup/run) and stream from it
--   CONNECT, USAGE      reach the database and the table's schema
--   SELECT              read the outbox table; nothing else in the database
-- It is not a superuser and owns nothing. Because CREATE PUBLICATION needs ownership of the
-- table, the publication is created here, by the owner; walbox finds it and only checks that
-- it covers the table.
\set ON_ERROR_STOP on
\if :{?role} \else \set role walbox \endif
\if :{?schema} \else \set schema public \endif
\if :{?table} \else \set table outbox \endif
\if :{?publication} \else \set publication walbox \endif

BEGIN;
CREATE ROLE :"role" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"role";
GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT SELECT ON TABLE :"schema".:"table" TO :"role";
-- Inserts only: walbox relays inserts and ignores every other change anyway.
CREATE PUBLICATION :"publication" FOR TABLE :"schema".:"table" WITH (publish = 'insert');
COMMIT;

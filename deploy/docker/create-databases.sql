-- Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d):
-- POSTGRES_DB creates Dagster's database; the app database is the second one.
CREATE DATABASE batchinfer;

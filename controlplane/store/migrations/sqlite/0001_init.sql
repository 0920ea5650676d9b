-- One table for every resource type. A rowid table with a unique key (not WITHOUT ROWID): specs can be
-- several KB (a Dataplane with many inbounds), which WITHOUT ROWID tables handle poorly.
CREATE TABLE resources (
    type              TEXT NOT NULL,
    mesh              TEXT NOT NULL,  -- '' for global-scoped types (Mesh, Zone, GlobalSecret)
    name              TEXT NOT NULL,
    version           INTEGER NOT NULL CHECK (version > 0),
    spec              TEXT NOT NULL,  -- the spec's JSON wire form
    labels            TEXT NOT NULL DEFAULT '{}',
    creation_time     TEXT NOT NULL,  -- ISO 8601, UTC
    modification_time TEXT NOT NULL
);

-- The key, and the listing order (mesh, name) within a type.
CREATE UNIQUE INDEX resources_key ON resources (type, mesh, name);

-- Deleting a mesh deletes everything in it.
CREATE INDEX resources_mesh ON resources (mesh);

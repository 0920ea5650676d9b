-- One table for every resource type. Names and meshes use the "C" collation so that listing order
-- (mesh, name) is byte order on every server, whatever locale the database was created with, and so that
-- name-prefix filters (LIKE 'p%') can use the primary key.
CREATE TABLE resources (
    type              text COLLATE "C" NOT NULL,
    mesh              text COLLATE "C" NOT NULL,  -- '' for global-scoped types (Mesh, Zone, GlobalSecret)
    name              text COLLATE "C" NOT NULL,
    version           bigint NOT NULL CHECK (version > 0),
    spec              text NOT NULL,              -- the spec's JSON wire form, opaque to the database
    labels            jsonb NOT NULL DEFAULT '{}'::jsonb,
    creation_time     timestamptz NOT NULL,
    modification_time timestamptz NOT NULL,
    PRIMARY KEY (type, mesh, name)
);

-- Deleting a mesh deletes everything in it.
CREATE INDEX resources_mesh_idx ON resources (mesh);

-- Label selectors (`labels @> '{"k": "v"}'`).
CREATE INDEX resources_labels_idx ON resources USING gin (labels jsonb_path_ops);

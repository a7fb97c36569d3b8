-- One row per rollout; the rollout itself (phase, steps, marks) as JSON.
-- At most one active rollout per service: the partial unique index refuses
-- a second, whatever races to insert it.
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    phase TEXT NOT NULL,
    active INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX rollouts_one_active_per_service ON rollouts (service) WHERE active = 1;
CREATE INDEX rollouts_by_service ON rollouts (service, created_ms);

//! hangar-registry (in progress)

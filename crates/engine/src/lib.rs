//! hangar-engine (in progress)

//! hangar-models (in progress)

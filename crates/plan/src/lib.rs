//! hangar-plan (in progress)

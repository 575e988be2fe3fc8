//! hangar-serve (in progress)

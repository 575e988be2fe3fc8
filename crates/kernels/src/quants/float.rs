//! float quant types (in progress)

//! legacy quant types (in progress)

//! kquants quant types (in progress)

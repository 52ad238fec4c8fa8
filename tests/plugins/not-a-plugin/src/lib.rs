//! Test fixture: an ordinary C-ABI library that a user might drop into the plugins folder.

/// Adds two numbers; the only export.
#[no_mangle]
pub extern "C" fn not_a_plugin_add(a: i32, b: i32) -> i32 {
    a.wrapping_add(b)
}

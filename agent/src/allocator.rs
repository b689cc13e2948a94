//! The agent binary's allocator (mimalloc, `main.rs`) and its options.

/// mimalloc's `mi_option_purge_delay` (the 16th value of its option enum, in v2 and v3
/// alike; the binding does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS at once instead of after mimalloc's delay (1 s in v3, the
/// version the binding builds): a delayed purge happens only when the same thread calls the allocator again, and the
/// threads that build the Kubernetes source's snapshots then idle, keeping what they freed
/// resident (a fifth of the agent's RSS at issue 18's scale, `cargo xtask bench
/// --kube-scale`). Called first thing in `main`.
pub fn purge_freed_memory_at_once() {
    #[expect(unsafe_code, reason = "an FFI call into the allocator's options")]
    // SAFETY: mi_option_set only stores an integer option, which mimalloc reads on its next
    // purge; it may be called at any time, from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

/// No transparent huge pages for the agent: mimalloc asks for them (`MADV_HUGEPAGE`) on its
/// arenas, and a huge page stays resident whole while any of it is in use, so what it purged
/// kept counting (about 30 MiB of the agent's RSS at issue 18's scale, `cargo xtask bench
/// --kube-scale`). The agent's data is read rarely; it gains nothing from them. Called first
/// thing in `main`; a kernel that refuses leaves them on (logged by the caller).
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[expect(unsafe_code, reason = "an FFI call to prctl")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a process flag.
    let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(unsafe_code, reason = "reads the allocator's option")]
    fn purge_delay() -> std::ffi::c_long {
        // SAFETY: mi_option_get only reads an integer option.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    #[test]
    fn transparent_huge_pages_are_off_once_disabled() {
        disable_transparent_huge_pages().unwrap();
        #[expect(unsafe_code, reason = "an FFI call to prctl")]
        // SAFETY: PR_GET_THP_DISABLE only reads the process flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }

    #[test]
    fn the_option_set_is_the_purge_delay() {
        // mimalloc v3's default for purge_delay, 1000 ms: another option at this index would
        // most likely have another default.
        assert_eq!(purge_delay(), 1000);
        purge_freed_memory_at_once();
        assert_eq!(purge_delay(), 0);
    }
}

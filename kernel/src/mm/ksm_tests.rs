
#[test_case]
fn ksm_console_command_prints_the_state_and_counters() {
    let (out, _) = crate::console::execute("ksm");
    for word in [
        "run 0",
        "pages_shared",
        "pages_sharing",
        "pages_unshared",
        "pages_volatile",
        "full_scans",
        "ksm_zero_pages",
        "general_profit",
        "stable_node_chains",
        "stable_node_dups",
        "cow_ksm",
    ] {
        assert!(out.contains(word), "no {word} in:\n{out}");
    }
    let (out, _) = crate::console::execute("set ksm.pages_to_scan=123");
    assert!(out.contains("ksm.pages_to_scan = 123"), "{out}");
    assert!(crate::console::execute("ksm").0.contains("pages_to_scan 123"));
    tunables::KSM_PAGES_TO_SCAN
        .set(tunables::KSM_DEFAULT_PAGES_TO_SCAN)
        .expect("in range");
}

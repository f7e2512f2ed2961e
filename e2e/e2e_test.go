package e2e

import (
	"testing"
)

// TestE2E is the suite: one control plane for everything, then the chart's
// installs (all at once, each in its own namespace), then the scenarios (all
// at once, each with its own namespaces and semaphore keys). The installs go
// first because their webhook configurations, unscoped and pointing at
// Services without endpoints, would refuse opted-in pods everywhere until
// they are uninstalled.
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("the end-to-end suite starts a control plane; skipped with -short")
	}
	e := startEnv(t)
	t.Run("chart", func(t *testing.T) { testChartInstall(t, e) })
	// An install whose uninstall failed leaves a configuration that would
	// refuse the scenarios' pods for reasons of its own.
	e.mustKctl(t, "", "delete", "mutatingwebhookconfigurations", "--all", "--ignore-not-found")
	t.Run("scenarios", func(t *testing.T) { testScenarios(t, e) })
}

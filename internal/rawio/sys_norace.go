//go:build linux && !race

package rawio

func raceRelease() {}

func raceAcquire() {}

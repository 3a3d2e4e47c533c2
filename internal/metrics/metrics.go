// Package metrics holds limiterd's Prometheus metrics. Each node has its own
// registry (no package-level state), so several nodes run in one process.
package metrics

import (
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are one node's metrics. The zero value is not usable; call New.
// All methods are safe for concurrent use; a nil *Metrics records nothing.
type Metrics struct {
	// Registry serves /metrics.
	Registry *prometheus.Registry

	decisions  *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	forwarded  *prometheus.CounterVec
	batchSize  prometheus.Histogram
	replLag    prometheus.Histogram
	flushTime  prometheus.Histogram
	flushRecs  prometheus.Counter
	overloaded prometheus.Counter
	wire       *prometheus.CounterVec

	// Children of the vectors a call records in, by label values.
	decisionOf  children[decisionLabels, prometheus.Counter]
	latencyOf   children[string, prometheus.Observer]
	forwardedOf children[forwardLabels, prometheus.Counter]
}

type decisionLabels struct {
	policy string
	code   int32
	shadow bool
}

type forwardLabels struct {
	kind string
	ok   bool
}

// children caches a vector's children by their label values, so that
// recording costs one map look-up rather than hashing the labels and
// taking the vector's lock (WithLabelValues), about 1% of a forwarding
// node's CPU under closed-loop load. The label sets are few (policies and
// codes, methods), so the map is copied when one is added.
type children[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

// get returns k's child, made by newChild the first time.
func (c *children[K, V]) get(k K, newChild func() V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	next := map[K]V{}
	if old != nil {
		next = maps.Clone(*old)
	}
	v := newChild()
	next[k] = v
	c.m.Store(&next)
	return v
}

// New registers the metrics, plus Go and process collectors, on a new
// registry. keys reports the keys held in memory when scraped.
func New(keys func() float64) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "limiterd_decisions_total",
			Help: "Allow decisions by policy and code (0 allowed, 122 rate, 123 concurrency); shadow=true when a shadow policy let a denial through.",
		}, []string{"policy", "code", "shadow"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "limiterd_request_duration_seconds",
			Help:    "Time to answer a gRPC call, by method.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 0.25, 1},
		}, []string{"method"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "limiterd_forwarded_total",
			Help: "Calls forwarded to a key's owner, by kind and result (ok, error).",
		}, []string{"kind", "result"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "limiterd_forward_batch_size",
			Help:    "Calls per forwarded batch.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		replLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "limiterd_replication_lag_seconds",
			Help:    "Time from the start of a replication round to its replica batch being confirmed (on the peer wire by the replica's next answer, within about 50 ms).",
			Buckets: []float64{1e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 5},
		}),
		flushTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "limiterd_store_flush_duration_seconds",
			Help:    "Time to write one batch of changed state to bbolt.",
			Buckets: []float64{1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1},
		}),
		flushRecs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "limiterd_store_flushed_records_total",
			Help: "Records written or deleted by flushes.",
		}),
		overloaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "limiterd_overloaded_total",
			Help: "Calls refused with UNAVAILABLE because too many were in flight.",
		}),
		wire: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "limiterd_peer_wire_events_total",
			Help: "Peer wire connections this node dialed (event=dialed), dials or handshakes that failed (dial_failed) and connections that broke while in use (broken).",
		}, []string{"event"}),
	}
	m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.decisions, m.latency, m.forwarded, m.batchSize, m.replLag, m.flushTime, m.flushRecs, m.overloaded, m.wire)
	if keys != nil {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "limiterd_keys_in_memory", Help: "Keys whose state is held in memory.",
		}, keys))
	}
	return m
}

// Decision counts one Allow decision.
func (m *Metrics) Decision(policy string, code int32, shadow bool) {
	if m == nil {
		return
	}
	m.decisionOf.get(decisionLabels{policy, code, shadow}, func() prometheus.Counter {
		return m.decisions.WithLabelValues(policy, strconv.Itoa(int(code)), strconv.FormatBool(shadow))
	}).Inc()
}

// Latency records the time one call took.
func (m *Metrics) Latency(method string, d time.Duration) {
	if m != nil {
		m.latencyOf.get(method, func() prometheus.Observer { return m.latency.WithLabelValues(method) }).Observe(d.Seconds())
	}
}

// Forwarded counts a call sent to a key's owner.
func (m *Metrics) Forwarded(kind string, err error) {
	if m == nil {
		return
	}
	ok := err == nil
	m.forwardedOf.get(forwardLabels{kind, ok}, func() prometheus.Counter {
		r := "ok"
		if !ok {
			r = "error"
		}
		return m.forwarded.WithLabelValues(kind, r)
	}).Inc()
}

// BatchSize records the size of one forwarded batch.
func (m *Metrics) BatchSize(n int) {
	if m != nil {
		m.batchSize.Observe(float64(n))
	}
}

// ReplicationLag records how long a replica batch took to be confirmed.
func (m *Metrics) ReplicationLag(d time.Duration) {
	if m != nil {
		m.replLag.Observe(d.Seconds())
	}
}

// Flush records one store flush.
func (m *Metrics) Flush(d time.Duration, records int) {
	if m == nil {
		return
	}
	m.flushTime.Observe(d.Seconds())
	m.flushRecs.Add(float64(records))
}

// WireEvent counts one peer wire event (cluster.WireEvent, as a string).
func (m *Metrics) WireEvent(event string) {
	if m != nil {
		m.wire.WithLabelValues(event).Inc()
	}
}

// Journal registers the store journal's size and fold count, read at each
// scrape from stats (store.DB.JournalStats).
func (m *Metrics) Journal(stats func() (bytes int, folds uint64)) {
	if m == nil {
		return
	}
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "limiterd_store_journal_bytes",
			Help: "Bytes of flushed records in the store's journal, not yet folded into their buckets.",
		}, func() float64 { b, _ := stats(); return float64(b) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "limiterd_store_journal_folds_total",
			Help: "Times the store's journal was folded into its buckets.",
		}, func() float64 { _, f := stats(); return float64(f) }),
	)
}

// Overloaded counts a call refused for load.
func (m *Metrics) Overloaded() {
	if m != nil {
		m.overloaded.Inc()
	}
}

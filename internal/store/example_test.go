package store_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/limiterd/limiterd/internal/store"
)

func Example() {
	dir, err := os.MkdirTemp("", "store-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	cfg := store.DefaultConfig()
	cfg.Path = filepath.Join(dir, "limiterd.db")
	db, err := store.Open(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// A periodic flush: the dirty records in one transaction.
	ctx := context.Background()
	err = db.Write(ctx, store.KindState, []store.Op{
		{Key: []byte("default\x00tenant:42"), Value: []byte("window bytes")},
		{Key: []byte("default\x00tenant:7"), Value: []byte("more bytes")},
		{Key: []byte("default\x00tenant:gone"), Delete: true},
	})
	if err != nil {
		log.Fatal(err)
	}

	v, err := db.Get(store.KindState, []byte("default\x00tenant:42"))
	fmt.Printf("%s %v\n", v, err)
	_, err = db.Get(store.KindState, []byte("default\x00tenant:gone"))
	fmt.Println(errors.Is(err, store.ErrNotFound))
	n, _ := db.Len(store.KindState)
	fmt.Println(n, "records")
	// Output:
	// window bytes <nil>
	// true
	// 2 records
}

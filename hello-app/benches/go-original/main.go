// Based on hello-app/main.go of GoogleCloudPlatform/kubernetes-engine-samples, Copyright
// Google LLC, licensed under the Apache License, Version 2.0
// (http://www.apache.org/licenses/LICENSE-2.0): the tutorial's sample app
// (gcr.io/google-samples/hello-app), so that the serve bench can measure the original's own
// rate next to ours. Modified here in two ways, both for the bench:
// it listens on 127.0.0.1 only (bench traffic stays on loopback), and it logs the port the
// kernel chose when PORT is 0, so that the bench can find it.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/", hello)

	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	listener, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("Server listening on port %d", listener.Addr().(*net.TCPAddr).Port)
	log.Fatal(http.Serve(listener, mux))
}

// hello answers every request as the original does, host name looked up per request.
func hello(w http.ResponseWriter, r *http.Request) {
	log.Printf("Serving request: %s", r.URL.Path)
	host, _ := os.Hostname()
	fmt.Fprintf(w, "Hello, world!\n")
	fmt.Fprintf(w, "Version: 1.0.0\n")
	fmt.Fprintf(w, "Hostname: %s\n", host)
}

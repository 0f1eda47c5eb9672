module hello-app-go-original

go 1.19
